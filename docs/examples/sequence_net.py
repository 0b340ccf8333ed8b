"""A model `archspec import` cannot write as a spec (docs/import.md): a recurrent layer, and
an input that goes through a subtraction the language has no merge for."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x - x.mean()  # no archspec merge subtracts
        out, _ = self.rnn(x.flatten(2).transpose(1, 2))
        return self.fc(out[:, -1])
