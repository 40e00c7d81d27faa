"""The ipywidgets panel: form, job rows, gallery, saving, style."""
