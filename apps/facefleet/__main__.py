from facefleet.cli import main

raise SystemExit(main())
