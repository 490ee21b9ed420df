"""Export a model directory's encoder to ONNX with torch.onnx (dynamo exporter), dynamic batch and length.

python -m tools.workers.export_onnx MODEL_DIR OUT.onnx
"""

from __future__ import annotations

import sys


def main():
    import torch
    import transformers

    model_dir, target = sys.argv[1], sys.argv[2]
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    ids = torch.ones((2, 9), dtype=torch.long)
    mask = torch.ones((2, 9), dtype=torch.long)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=512)
    torch.onnx.export(
        model,
        (ids, mask),
        target,
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamo=True,
        opset_version=18,
        external_data=False,
        dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
    )


if __name__ == "__main__":
    main()
