"""The distillation methods, one file each; importing a module registers its method (see ``distill.losses``).

The order here is the order of the README's method table.
"""

from distill.methods.kd import KnowledgeDistillation
from distill.methods.dkd import DecoupledKnowledgeDistillation
from distill.methods.cross_entropy import CrossEntropy
from distill.methods.fitnet import FitNet
from distill.methods.attention import AttentionTransfer, attention_map
from distill.methods.fsp import FlowDiscriminators, FlowOfSolutionProcedure, fsp_matrix
from distill.methods.dense_flow import DenseFlow
from distill.methods.ktsvd import SingularVectorTransfer, leading_singular_vectors
from distill.methods.self_distill import SelfDistillation
from distill.methods.specialists import SpecialistEnsemble, SpecialistNetworks

__all__ = [
    "AttentionTransfer",
    "CrossEntropy",
    "DecoupledKnowledgeDistillation",
    "DenseFlow",
    "FitNet",
    "FlowDiscriminators",
    "FlowOfSolutionProcedure",
    "KnowledgeDistillation",
    "SelfDistillation",
    "SingularVectorTransfer",
    "SpecialistEnsemble",
    "SpecialistNetworks",
    "attention_map",
    "fsp_matrix",
    "leading_singular_vectors",
]
