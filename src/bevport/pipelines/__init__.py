"""Torch-free side of each architecture, one module per architecture (the recipe's `architecture` names it).

A module here holds the recipe checks of its model section, the upstream-config overlay, the graphs' ports
(`graph_specs`, read by `bevport.contract`), and its `Pipeline`: frame -> graph inputs, the deploy graphs run as the
deploy binary runs them, head outputs for decoding. The torch side of the same architecture is
`bevport.models.<architecture>`.
"""
