"""Text in and out of the model: prompts (chat templates, R1's conventions), the reasoning splitter, stop strings, thinking budgets, sampling settings and saved conversations."""
