"""ablations: KerasTuner studies over the zoo's decoder variants, standing on `training`.

`studies` defines every study, `search` runs one with KerasTuner, `pipeline` wires data and
search, `report` and `plots` write `results/<study>/`; `run` is the command.
"""
