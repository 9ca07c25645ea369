from podwire.cli import main

raise SystemExit(main())
