from autoscale.cli import main

raise SystemExit(main())
