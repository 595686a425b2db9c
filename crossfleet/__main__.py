"""`python -m crossfleet ...` is the `crossfleet` command."""

from crossfleet.cli import main

raise SystemExit(main())
