"""What an agent CLI needs beyond running it: how its prompt goes in and what its output means.

    delivery   the prompt on stdin, in a file ({prompt_file}) or as an argument ({prompt})
    output     parsers of structured output (claude-json, codex-jsonl), fed as it arrives
    usage      tokens, cost, turns, model, session id: from the output or $TINYTOWN_USAGE_FILE
    failure    the class of a failed round (error, timeout, rate_limited, fatal) and a
               "retry after" it names
    report     one round's verdict from all of the above (pure)
    cooldown   how long an agent of a cooling-down CLI waits (jitter; pure)
"""
