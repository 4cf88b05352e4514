"""Training of the learned models: data recipes, training loops, threshold choice.

``segment`` trains the nucleus segmenter, ``track`` the LSTM tracker (and chooses its
thresholds on validation movies). The runtime packages (worker, segment, track, store, …)
never import this package: only the CLI's ``train`` commands and the tests do, so a live
worker loads no training or evaluation code.
"""
