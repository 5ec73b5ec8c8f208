"""The command line, one module per area (`register(sub)` adds its subcommands to cli.py's
parser); common.py is what they share. Only stdlib + tinytownd.cli at import time."""
