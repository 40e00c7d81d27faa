"""Views: progress rows, result grids and tables, rendered for a notebook, a terminal or a saved
notebook. They subscribe to the engine's handles and decide nothing."""
