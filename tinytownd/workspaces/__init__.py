"""Agent workspaces: every task in a git worktree and branch of its own (README, "Agent
workspaces").

  naming    the branch from its pattern, the worktree's path, the commit message (pure)
  policy    keep policies and who is at fault when git fails (pure); WorkspaceError
  spec      an agent's workspace settings from its CLI's and its own keys (pure)
  proc      running git off the event loop (the runtime's spawner, pidfd, timeouts)
  git       the git operations, one command each
  lock      one lock per repository (a gevent semaphore and an flock on its git directory)
  records   the task's workspace fields in its daemon meta, and the town's set of workspaces
  manager   WorkspaceManager: prepare, commit, finish, sweep (start-up after a crash, ended tasks)
  round_hook  RoundWorkspace: what one round calls (prepare before the CLI, finalize after)
  listing   `tinytownd workspaces list|prune`: what exists, its state and disk use
  patches   `tinytownd batch --patches DIR`: one format-patch per task with changes

Nothing is imported here (config imports naming and git lazily for its checks).
"""
