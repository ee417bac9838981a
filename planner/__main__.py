"""``python -m planner`` runs the ftplan CLI."""

from __future__ import annotations

from planner._entry import main

if __name__ == "__main__":
    main()
