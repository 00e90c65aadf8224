"""Deepfake-Agent (docs/agent.md): forensic experts, each reporting in one schema
(`reports`), the supplement's prompts and their strict parsers (`prompts`, `parse`),
aggregation of the experts' reports into one verdict (`aggregate`), and the GRPO
rewards of the learned aggregator (`rewards`)."""
