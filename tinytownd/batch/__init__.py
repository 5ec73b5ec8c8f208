"""Headless batch runs: `tinytownd batch FILE` (README.md, "Headless batch runs").

A module per job:
  file      the batch file: TaskSpec, BatchFile, parse/load, BatchFileError and UsageError
  agents    the agent sections of an embedded batch, check_agents, the embedded daemon config
  follow    Batch: what every batch shares (its record, the notify subscription, states, counts)
  tasks     TaskBatch: submit a task file to the backlog, follow it, its summary rows
  dispatch  DispatchedBatch: the embedded task batch, which hands its tasks to the agents itself
  mission   MissionBatch: a mission file, started through the missions API, followed by item
  progress  the reporters (one factory, make_reporter), the summary document and table (pure)
  main      main(args), and the two modes, embedded and submit (-c), on one skeleton

Nothing is imported here: `tinytownd.commands.batch_cmd` imports `main` only when the command runs.
"""
