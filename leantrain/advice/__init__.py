"""leantrain advise (`lt.advise`): which techniques speed up your model, measured here. The package is named
advice so that `leantrain.advise` stays the function."""
