"""Interventions on plasticity (torch only): see ``plasticrl.interventions.base`` for the seam."""
