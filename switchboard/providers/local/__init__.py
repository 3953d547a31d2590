"""The embedded model's parts: the llama.cpp engine, its queue, prompt formats, reply text, vocabulary.

`switchboard.providers.local_model.LocalModelProvider` puts them together behind the Provider
interface; see docs/local-model.md.
"""
