from raydt.cli import main

raise SystemExit(main())
