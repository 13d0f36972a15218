"""glmtune: fine-tune ChatGLM3 and any Hugging Face causal LM, evaluate it honestly, deploy it."""

__version__ = "0.1.0"
