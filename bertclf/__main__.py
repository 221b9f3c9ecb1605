from bertclf.cli import main

raise SystemExit(main())
