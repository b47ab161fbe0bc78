from galaxy_infer.cli import main

raise SystemExit(main())
