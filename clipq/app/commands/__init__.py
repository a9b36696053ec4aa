"""CLI commands, one module each (``add_parser(subparsers)``; heavy imports inside handlers)."""
