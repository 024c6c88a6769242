"""Train a small CNN on scikit-learn's digits with a fastopt.torch optimizer: a drop-in for torch.optim.

    python docs/examples/torch_cnn.py                     # fastopt.torch.AdamW
    python docs/examples/torch_cnn.py --compare           # and torch.optim.AdamW from the same start and batches

Everything around the optimizer is plain torch: nn.Module, autograd, a torch OneCycleLR schedule, zero_grad,
state_dict. CPU tensors are updated in place by fastopt's fused Numba kernels through zero-copy NumPy views.
"""

import argparse
import copy

import torch
from sklearn.datasets import load_digits

import fastopt.torch


def train(model, optimizer, x, y, steps, batch=64):
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, len(x), (batch,), generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        schedule.step()
    return loss.item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--compare", action="store_true", help="also train with torch.optim.AdamW and compare")
    args = parser.parse_args(argv)

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 10))
    twin = copy.deepcopy(model)

    optimizer = fastopt.torch.AdamW(model.parameters(), lr=0.01, weight_decay=1e-2)
    loss = train(model, optimizer, x_train, y_train, args.steps)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"fastopt.torch.AdamW: final loss {loss:.4f}, test accuracy {accuracy:.4f}")
    if args.compare:
        reference = torch.optim.AdamW(twin.parameters(), lr=0.01, weight_decay=1e-2)
        ref_loss = train(twin, reference, x_train, y_train, args.steps)
        gap = max((a - b).abs().max().item() for a, b in zip(model.parameters(), twin.parameters()))
        print(f"torch.optim.AdamW:   final loss {ref_loss:.4f}; largest weight difference {gap:.2e}")
    return accuracy


if __name__ == "__main__":
    main()
