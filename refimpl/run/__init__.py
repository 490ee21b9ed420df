"""Running a loaded model: the modules of modules.json (``modules``), the pipeline that batches
sentences through them (``pipeline``), the inputs it accepts (``inputs``) and its threads (``threads``).
"""
