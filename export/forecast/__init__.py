"""Forecasting: data sets and their splits, forecasters (transformer, LSTM with attention, AR),
training, metrics and evaluation beside statistical baselines, and export to a bundle."""
