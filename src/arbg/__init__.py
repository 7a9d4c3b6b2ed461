"""arbg: Autoregressive Boltzmann Generators for peptide conformations.

Positions are in nm and energies in kT throughout the package.
"""

__version__ = "0.1.0"
