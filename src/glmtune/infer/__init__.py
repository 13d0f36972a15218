"""Use a finished run or a bare model: load, predict, generate, chat, ensemble, export, serve.

Never imports glmtune.train (the import contract checks it)."""
