"""Process exit codes, in one place (sysexits.h plus LSB status codes).

`tinytownd --help` prints this table; README.md documents it. `tinytownd batch` exits with OK,
FAILURE (some tasks failed), BATCH_USAGE, UNAVAILABLE and TEMPFAIL (interrupted, resumable).
"""

OK = 0
FAILURE = 1              # generic failure; batch: some tasks failed
BATCH_USAGE = 2          # batch: usage error or invalid batch file
NOT_RUNNING = 3          # `status`: the daemon is not running (LSB "program is not running")
STATUS_UNKNOWN = 4       # `status`: a daemon listens but did not answer in time (LSB "unknown")
USAGE = 64               # EX_USAGE: bad command line
DATAERR = 65             # EX_DATAERR: bad input data (unknown task/agent id, bad mission file)
NOINPUT = 66             # EX_NOINPUT: a named input file does not exist
UNAVAILABLE = 69         # EX_UNAVAILABLE: Redis or the daemon cannot be reached / started
REFUSED = 74             # EX_IOERR: Redis refused the write (out of memory, cannot save): nothing applied
SOFTWARE = 70            # EX_SOFTWARE: internal error
CANTCREAT = 73           # EX_CANTCREAT: pidfile held by another instance, socket in use
TEMPFAIL = 75            # EX_TEMPFAIL: timed out (`stop --timeout`); batch interrupted, resumable
NOPERM = 77              # EX_NOPERM: control socket refused our uid
CONFIG = 78              # EX_CONFIG: invalid configuration

TABLE = [
    (OK, "success"),
    (FAILURE, "failure (batch: some tasks failed)"),
    (BATCH_USAGE, "batch: usage error or invalid batch file"),
    (NOT_RUNNING, "status: daemon not running"),
    (STATUS_UNKNOWN, "status: a daemon listens but did not answer in time"),
    (USAGE, "usage error"),
    (DATAERR, "bad input: unknown id, invalid mission file"),
    (NOINPUT, "input file not found"),
    (UNAVAILABLE, "Redis or the daemon unavailable"),
    (REFUSED, "Redis refused the write (out of memory, cannot save to disk); nothing was applied"),
    (SOFTWARE, "internal error"),
    (CANTCREAT, "another instance holds the pidfile or control socket"),
    (TEMPFAIL, "timed out (stop --timeout; reload/stop: no answer in time); batch interrupted, "
               "resume with --resume ID"),
    (NOPERM, "permission denied on the control socket"),
    (CONFIG, "invalid configuration"),
]


def help_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in TABLE)
