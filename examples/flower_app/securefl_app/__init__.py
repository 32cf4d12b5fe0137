"""securefl on Flower: the digits MLP trained by Opacus DP-SGD clients with
securefl secure aggregation and a privacy ledger."""
