"""The Data Advisor nodes, one module per step of the method."""
