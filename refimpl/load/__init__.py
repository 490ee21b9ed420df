"""Loading a model, in call order:

1. ``locate``: the model's directory (local, or a Hub snapshot) and its ``modules.json``;
2. ``config``: config.json, sentence_bert_config.json, 1_Pooling/config.json and the rest, checked;
3. ``tokenizer``: tokenizer.json (or vocab.txt) with sentence-transformers' settings
   (``long_text``: cutting texts that cannot fit before tokenizing them);
4. ``weights``: the checkpoint's tensors (``refimpl.formats``), checked against the config.

``refimpl.run.pipeline.load`` drives these steps for every module in modules.json.
"""
