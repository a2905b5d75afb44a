"""``python -m pentachora.cli`` — the same as the ``pentachora`` console script."""

from pentachora.cli import main

if __name__ == "__main__":
    main()
