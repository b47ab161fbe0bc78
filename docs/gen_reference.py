"""MkDocs hook: the command reference from the programs' own argparse parsers, and the model card.

``commands.md`` holds the hand-written part; the ``<!-- commands -->`` marker in it is replaced at
build time by one section per program and subcommand, read from each ``build_parser()``, so an
option added to a parser appears here with its help text and cannot drift. The bundled model card
(``galaxy_infer/models/MODEL_CARD.md``) ships inside the package and is served as
``model-card.md`` from that one file.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- commands -->"
MODEL_CARD = ROOT / "galaxy_infer" / "models" / "MODEL_CARD.md"


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every program's parser, in the order the reference shows them."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from galaxy_infer.cli import build_parser as galaxy_infer
    from jobs.classify_catalog import build_parser as classify_catalog
    from jobs.nightly_ingest import build_parser as nightly_ingest
    from training.cli import build_parser as training

    return [("galaxy-infer", galaxy_infer()), ("python jobs/classify_catalog.py", classify_catalog()),
            ("python jobs/nightly_ingest.py", nightly_ingest()), ("python -m training", training())]


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def option_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += " " + (action.metavar or action.dest.upper())
        else:
            name = action.metavar or action.dest
        default = ""
        if action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
            default = f"`{action.default}`"
        required = " (required)" if action.required and action.option_strings else ""
        choices = f" One of: {', '.join(map(str, action.choices))}." if action.choices else ""
        rows.append(f"| `{cell(name)}`{required} | {default} | {cell((action.help or '') % vars(action) if action.help else '')}{choices} |")
    if not rows:
        return []
    return ["| option | default | meaning |", "|---|---|---|", *rows, ""]


def section(title: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    lines = [f"{'#' * level} `{title}`", "", "```text", usage, "```", ""]
    if parser.description and parser.formatter_class is argparse.RawDescriptionHelpFormatter:
        lines += ["```text", parser.description.strip("\n"), "```", ""]
    elif parser.description:
        lines += [parser.description.strip(), ""]
    return lines + option_table(parser)


def reference() -> str:
    """The generated Markdown: each program, then each of its subcommands."""
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal; fixed so builds match
    lines: list[str] = []
    for title, parser in parsers():
        lines += section(title, parser, 2)
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for sub in subs:
            helps = {c.dest: c.help for c in sub._choices_actions}
            for name, child in sub.choices.items():
                if helps.get(name) and not child.description:
                    child.description = helps[name]
                lines += section(f"{title} {name}", child, 3)
    return "\n".join(lines)


def on_files(files, config):
    """Serve the packaged model card as ``model-card.md``."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "model-card.md", content=MODEL_CARD.read_text()))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, reference())
    return markdown


if __name__ == "__main__":
    print(reference())
