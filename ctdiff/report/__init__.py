"""The report: its sections (metrics beside the paper, the reading guide, figures, the reader study) in Markdown and HTML."""
