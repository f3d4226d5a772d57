"""apclip.export.prompts: action-conditioned prompts from an LLM (`apclip-prompts`).

client (OpenAI-compatible chat completions with retries and structured output), strategies (what is
asked per label), postprocess (cleaning and cutting descriptions), journal (resumable answers),
graph (attribute graphs), review (the manual double-check), generate (the run), cli.
"""
