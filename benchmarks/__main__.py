"""`python -m benchmarks`: the same as `benchmarks/run` (benchmarks/suite.py)."""

from benchmarks.suite import main

raise SystemExit(main())
