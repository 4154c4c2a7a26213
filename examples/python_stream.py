"""A two-task stream in plain Python: an Adapter learns the base world, then SDPT learns the aquarium world on
top of it; both tasks are evaluated before and after each step, and the forgetting metrics computed.

    python examples/python_stream.py [--steps 100] [--policy all|own|route]

The same stream as a config is configs/smoke.yaml; at the same sizes and steps both give the same matrix.
"""
import argparse

import continual as cl


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per task (default %(default)s)")
    parser.add_argument("--policy", default="all", help="composition policy at evaluation (default %(default)s)")
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--val-images", type=int, default=8)
    args = parser.parse_args(argv)

    host = cl.build_host("builtin:tiny-base")
    sizes = {"train_images": args.train_images, "val_images": args.val_images}
    tasks = [cl.load_task("synthetic:base", host=host, **sizes), cl.load_task("synthetic:aquarium", host=host, **sizes)]
    stack = cl.Stack(host)
    zero_shot = [cl.evaluate(stack, task, args.policy)["mAP"] for task in tasks]
    matrix = []
    for index, (task, method) in enumerate(zip(tasks, ["adapter", "sdpt"])):
        config = cl.TrainConfig(steps=args.steps, batch_size=4, warmup=1, seed=index)  # a config's seed + step index
        cl.train(stack, cl.build_module(method, task=task), task, config)
        matrix.append([cl.evaluate(stack, t, args.policy)["mAP"] for t in tasks])
    derived = cl.derived_metrics([t.name for t in tasks], matrix, zero_shot)
    print("zero-shot", [round(v, 3) for v in zero_shot])
    print("matrix", [[round(v, 3) for v in row] for row in matrix])
    print("final average", round(derived["final_average"], 3), "BWT", round(derived["bwt"], 3),
          "FWT", round(derived["fwt"], 3))
    return {"zero_shot": zero_shot, "matrix": matrix, "derived": derived}


if __name__ == "__main__":
    main()
