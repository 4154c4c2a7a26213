"""A new PEFT method in user code, run from a config: IA³-style gains (Liu et al., 2022), a learned vector
per chosen linear layer that rescales its output, initialised at 1 so a fresh module changes nothing.

    python examples/custom_method.py [--steps 4]        # runs examples/custom_method.yaml
    continual run examples/custom_method.yaml            # the same: the config's `imports` loads this file
"""
import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import continual as cl


@dataclass
class GainsConfig:
    targets: tuple[str, ...] = ("value",)  # name suffixes of the linear layers to rescale


@cl.register_method
class Gains(cl.PeftModule):
    method = "gains"
    Config = GainsConfig
    default_lr = 1e-2

    def _layers(self, host) -> dict[str, nn.Linear]:
        return {name: m for name, m in host.model.named_modules()
                if isinstance(m, nn.Linear) and name.endswith(tuple(self.config.targets))}

    def build(self, host) -> None:  # the parameters, sized to the host (zero: a gain of exactly 1)
        self.gains = nn.ParameterList(nn.Parameter(torch.zeros(m.out_features)) for m in self._layers(host).values())

    def install(self, host):  # hooks on the host's layers; their handles let detach() restore the host
        return [layer.register_forward_hook(self._rescale(gain))
                for layer, gain in zip(self._layers(host).values(), self.gains)]

    def _rescale(self, gain):
        def hook(module, args, output):
            return output * (1 + gain.to(output.dtype)) if self.enabled else None
        return hook


def main(argv=None) -> cl.Results:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per task (default %(default)s)")
    parser.add_argument("--run-dir", default="runs/custom-method")
    args = parser.parse_args(argv)
    config = Path(__file__).with_suffix(".yaml")
    results = cl.run(config, [f"train.steps={args.steps}", f"run_dir={args.run_dir}"], overwrite=True)
    print(results.stream.table())
    return results


if __name__ == "__main__":
    main()
