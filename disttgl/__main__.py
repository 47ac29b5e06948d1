from disttgl.cli import main

raise SystemExit(main())
