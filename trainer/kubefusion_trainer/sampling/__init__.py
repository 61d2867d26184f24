"""OpenAI-compatible chat sampling: request building, the retrying endpoint client, and the chunked runner."""
