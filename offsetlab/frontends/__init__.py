"""Front ends: the command line, the demo, the notebook widgets, the Gradio panel, figures
and HTML reports. Nothing below imports them.
"""
