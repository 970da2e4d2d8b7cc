"""The app layer, above the core: the `nasax` command, `ImageClassifier`, `nasax tune` and
the report. Nothing in the core (the root package, `supernet`, `search`, `train`) imports
it."""
