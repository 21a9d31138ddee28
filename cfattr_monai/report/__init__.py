"""Report: Table 1, ROC curves, overlay grids and timing tables as Markdown + PNG."""
