import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    MODEL_FORMAT_TORCHSCRIPT: _ClassVar[ModelFormat]
    MODEL_FORMAT_EXPORTED_PROGRAM: _ClassVar[ModelFormat]
    MODEL_FORMAT_STATE_DICT: _ClassVar[ModelFormat]
    MODEL_FORMAT_ONNX: _ClassVar[ModelFormat]
    MODEL_FORMAT_SAFETENSORS: _ClassVar[ModelFormat]

class DataFreeMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_FREE_METHOD_UNSPECIFIED: _ClassVar[DataFreeMethod]
    DATA_FREE_METHOD_DFAD: _ClassVar[DataFreeMethod]
    DATA_FREE_METHOD_BN_PRIOR: _ClassVar[DataFreeMethod]

class Device(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_UNSPECIFIED: _ClassVar[Device]
    DEVICE_CPU: _ClassVar[Device]
    DEVICE_CUDA: _ClassVar[Device]

class DataLoading(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_LOADING_AUTO: _ClassVar[DataLoading]
    DATA_LOADING_IN_MEMORY: _ClassVar[DataLoading]
    DATA_LOADING_STREAMED: _ClassVar[DataLoading]

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_SGD: _ClassVar[Optimizer]
    OPTIMIZER_ADAM: _ClassVar[Optimizer]

class LrSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LR_SCHEDULE_UNSPECIFIED: _ClassVar[LrSchedule]
    LR_SCHEDULE_COSINE: _ClassVar[LrSchedule]
    LR_SCHEDULE_CONSTANT: _ClassVar[LrSchedule]

class Augmentation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUGMENTATION_AUTO: _ClassVar[Augmentation]
    AUGMENTATION_NONE: _ClassVar[Augmentation]
    AUGMENTATION_STANDARD: _ClassVar[Augmentation]
    AUGMENTATION_STRONG: _ClassVar[Augmentation]

class OnnxExporter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ONNX_EXPORTER_UNSPECIFIED: _ClassVar[OnnxExporter]
    ONNX_EXPORTER_DYNAMO: _ClassVar[OnnxExporter]
    ONNX_EXPORTER_TORCHSCRIPT: _ClassVar[OnnxExporter]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_DISTILLATION: _ClassVar[JobKind]
    JOB_KIND_BENCHMARK_ONLY: _ClassVar[JobKind]
MODEL_FORMAT_UNSPECIFIED: ModelFormat
MODEL_FORMAT_TORCHSCRIPT: ModelFormat
MODEL_FORMAT_EXPORTED_PROGRAM: ModelFormat
MODEL_FORMAT_STATE_DICT: ModelFormat
MODEL_FORMAT_ONNX: ModelFormat
MODEL_FORMAT_SAFETENSORS: ModelFormat
DATA_FREE_METHOD_UNSPECIFIED: DataFreeMethod
DATA_FREE_METHOD_DFAD: DataFreeMethod
DATA_FREE_METHOD_BN_PRIOR: DataFreeMethod
DEVICE_UNSPECIFIED: Device
DEVICE_CPU: Device
DEVICE_CUDA: Device
DATA_LOADING_AUTO: DataLoading
DATA_LOADING_IN_MEMORY: DataLoading
DATA_LOADING_STREAMED: DataLoading
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_SGD: Optimizer
OPTIMIZER_ADAM: Optimizer
LR_SCHEDULE_UNSPECIFIED: LrSchedule
LR_SCHEDULE_COSINE: LrSchedule
LR_SCHEDULE_CONSTANT: LrSchedule
AUGMENTATION_AUTO: Augmentation
AUGMENTATION_NONE: Augmentation
AUGMENTATION_STANDARD: Augmentation
AUGMENTATION_STRONG: Augmentation
ONNX_EXPORTER_UNSPECIFIED: OnnxExporter
ONNX_EXPORTER_DYNAMO: OnnxExporter
ONNX_EXPORTER_TORCHSCRIPT: OnnxExporter
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_DISTILLATION: JobKind
JOB_KIND_BENCHMARK_ONLY: JobKind

class UploadModelHeader(_message.Message):
    __slots__ = ("name", "format", "architecture", "sha256", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: ModelFormat
    architecture: str
    sha256: str
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., architecture: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadModelHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadModelHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("id", "name", "format", "architecture", "sha256", "size_bytes", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    format: ModelFormat
    architecture: str
    sha256: str
    size_bytes: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., architecture: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UploadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("teacher_model_id", "student", "dataset", "losses", "training", "export", "benchmark", "device", "display_name", "data_free", "benchmark_only", "distributed", "search")
    TEACHER_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FREE_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_ONLY_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    teacher_model_id: str
    student: StudentSpec
    dataset: DatasetSpec
    losses: _containers.RepeatedCompositeFieldContainer[LossTerm]
    training: TrainingSpec
    export: ExportSpec
    benchmark: BenchmarkSpec
    device: Device
    display_name: str
    data_free: DataFreeSpec
    benchmark_only: BenchmarkOnlySpec
    distributed: DistributedSpec
    search: SearchSpec
    def __init__(self, teacher_model_id: _Optional[str] = ..., student: _Optional[_Union[StudentSpec, _Mapping]] = ..., dataset: _Optional[_Union[DatasetSpec, _Mapping]] = ..., losses: _Optional[_Iterable[_Union[LossTerm, _Mapping]]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., export: _Optional[_Union[ExportSpec, _Mapping]] = ..., benchmark: _Optional[_Union[BenchmarkSpec, _Mapping]] = ..., device: _Optional[_Union[Device, str]] = ..., display_name: _Optional[str] = ..., data_free: _Optional[_Union[DataFreeSpec, _Mapping]] = ..., benchmark_only: _Optional[_Union[BenchmarkOnlySpec, _Mapping]] = ..., distributed: _Optional[_Union[DistributedSpec, _Mapping]] = ..., search: _Optional[_Union[SearchSpec, _Mapping]] = ...) -> None: ...

class SearchSpec(_message.Message):
    __slots__ = ("parameters", "trials", "held_out_fraction", "trial_epochs", "students", "methods", "latency", "max_minutes", "no_pruning", "accuracy_tolerance")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TRIAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STUDENTS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_MINUTES_FIELD_NUMBER: _ClassVar[int]
    NO_PRUNING_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[SearchParameter]
    trials: int
    held_out_fraction: float
    trial_epochs: int
    students: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    latency: SearchLatency
    max_minutes: float
    no_pruning: bool
    accuracy_tolerance: float
    def __init__(self, parameters: _Optional[_Iterable[_Union[SearchParameter, _Mapping]]] = ..., trials: _Optional[int] = ..., held_out_fraction: _Optional[float] = ..., trial_epochs: _Optional[int] = ..., students: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., latency: _Optional[_Union[SearchLatency, _Mapping]] = ..., max_minutes: _Optional[float] = ..., no_pruning: _Optional[bool] = ..., accuracy_tolerance: _Optional[float] = ...) -> None: ...

class SearchLatency(_message.Message):
    __slots__ = ("batch_size", "runtime")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    runtime: str
    def __init__(self, batch_size: _Optional[int] = ..., runtime: _Optional[str] = ...) -> None: ...

class SearchParameter(_message.Message):
    __slots__ = ("name", "low", "high", "log")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    name: str
    low: float
    high: float
    log: bool
    def __init__(self, name: _Optional[str] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., log: _Optional[bool] = ...) -> None: ...

class DistributedSpec(_message.Message):
    __slots__ = ("processes_per_node", "nodes", "rendezvous_endpoint", "run_id")
    PROCESSES_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    processes_per_node: int
    nodes: int
    rendezvous_endpoint: str
    run_id: str
    def __init__(self, processes_per_node: _Optional[int] = ..., nodes: _Optional[int] = ..., rendezvous_endpoint: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class BenchmarkOnlySpec(_message.Message):
    __slots__ = ("student_model_id", "input_shape")
    STUDENT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    student_model_id: str
    input_shape: InputShape
    def __init__(self, student_model_id: _Optional[str] = ..., input_shape: _Optional[_Union[InputShape, _Mapping]] = ...) -> None: ...

class DataFreeSpec(_message.Message):
    __slots__ = ("method", "input_shape", "iterations", "student_steps", "batch_size", "student_learning_rate", "generator_learning_rate", "generator_width", "adversarial_weight", "balance_weight", "bn_weight", "confidence_weight", "replay_steps", "replay_memory_mb", "target_weight", "logit_bound")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    STUDENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STUDENT_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_WIDTH_FIELD_NUMBER: _ClassVar[int]
    ADVERSARIAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BALANCE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BN_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REPLAY_STEPS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    TARGET_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BOUND_FIELD_NUMBER: _ClassVar[int]
    method: DataFreeMethod
    input_shape: InputShape
    iterations: int
    student_steps: int
    batch_size: int
    student_learning_rate: float
    generator_learning_rate: float
    generator_width: int
    adversarial_weight: float
    balance_weight: float
    bn_weight: float
    confidence_weight: float
    replay_steps: int
    replay_memory_mb: int
    target_weight: float
    logit_bound: float
    def __init__(self, method: _Optional[_Union[DataFreeMethod, str]] = ..., input_shape: _Optional[_Union[InputShape, _Mapping]] = ..., iterations: _Optional[int] = ..., student_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., student_learning_rate: _Optional[float] = ..., generator_learning_rate: _Optional[float] = ..., generator_width: _Optional[int] = ..., adversarial_weight: _Optional[float] = ..., balance_weight: _Optional[float] = ..., bn_weight: _Optional[float] = ..., confidence_weight: _Optional[float] = ..., replay_steps: _Optional[int] = ..., replay_memory_mb: _Optional[int] = ..., target_weight: _Optional[float] = ..., logit_bound: _Optional[float] = ...) -> None: ...

class InputShape(_message.Message):
    __slots__ = ("channels", "height", "width")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    channels: int
    height: int
    width: int
    def __init__(self, channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class StudentSpec(_message.Message):
    __slots__ = ("architecture", "init_model_id", "auto", "model_id")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    INIT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    init_model_id: str
    auto: AutoStudent
    model_id: str
    def __init__(self, architecture: _Optional[str] = ..., init_model_id: _Optional[str] = ..., auto: _Optional[_Union[AutoStudent, _Mapping]] = ..., model_id: _Optional[str] = ...) -> None: ...

class AutoStudent(_message.Message):
    __slots__ = ("max_latency_ms", "min_speedup", "batch_size", "runtime", "candidates")
    MAX_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    max_latency_ms: float
    min_speedup: float
    batch_size: int
    runtime: str
    candidates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_latency_ms: _Optional[float] = ..., min_speedup: _Optional[float] = ..., batch_size: _Optional[int] = ..., runtime: _Optional[str] = ..., candidates: _Optional[_Iterable[str]] = ...) -> None: ...

class DatasetSpec(_message.Message):
    __slots__ = ("torchvision", "image_folder", "generated", "webdataset", "max_train_samples", "max_val_samples", "mean", "std", "exclude_classes", "loader_workers")
    TORCHVISION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FOLDER_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    WEBDATASET_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_VAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    LOADER_WORKERS_FIELD_NUMBER: _ClassVar[int]
    torchvision: TorchvisionDataset
    image_folder: ImageFolderDataset
    generated: GeneratedDataset
    webdataset: WebDatasetShards
    max_train_samples: int
    max_val_samples: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    exclude_classes: _containers.RepeatedScalarFieldContainer[int]
    loader_workers: int
    def __init__(self, torchvision: _Optional[_Union[TorchvisionDataset, _Mapping]] = ..., image_folder: _Optional[_Union[ImageFolderDataset, _Mapping]] = ..., generated: _Optional[_Union[GeneratedDataset, _Mapping]] = ..., webdataset: _Optional[_Union[WebDatasetShards, _Mapping]] = ..., max_train_samples: _Optional[int] = ..., max_val_samples: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., exclude_classes: _Optional[_Iterable[int]] = ..., loader_workers: _Optional[int] = ...) -> None: ...

class TorchvisionDataset(_message.Message):
    __slots__ = ("name", "root", "download")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    root: str
    download: bool
    def __init__(self, name: _Optional[str] = ..., root: _Optional[str] = ..., download: _Optional[bool] = ...) -> None: ...

class ImageFolderDataset(_message.Message):
    __slots__ = ("train_dir", "val_dir", "image_size", "channels", "loading")
    TRAIN_DIR_FIELD_NUMBER: _ClassVar[int]
    VAL_DIR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LOADING_FIELD_NUMBER: _ClassVar[int]
    train_dir: str
    val_dir: str
    image_size: int
    channels: int
    loading: DataLoading
    def __init__(self, train_dir: _Optional[str] = ..., val_dir: _Optional[str] = ..., image_size: _Optional[int] = ..., channels: _Optional[int] = ..., loading: _Optional[_Union[DataLoading, str]] = ...) -> None: ...

class WebDatasetShards(_message.Message):
    __slots__ = ("train_shards", "val_shards", "image_size", "channels", "classes")
    TRAIN_SHARDS_FIELD_NUMBER: _ClassVar[int]
    VAL_SHARDS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    train_shards: _containers.RepeatedScalarFieldContainer[str]
    val_shards: _containers.RepeatedScalarFieldContainer[str]
    image_size: int
    channels: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, train_shards: _Optional[_Iterable[str]] = ..., val_shards: _Optional[_Iterable[str]] = ..., image_size: _Optional[int] = ..., channels: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ...) -> None: ...

class GeneratedDataset(_message.Message):
    __slots__ = ("num_classes", "image_size", "channels", "train_size", "val_size", "seed")
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    num_classes: int
    image_size: int
    channels: int
    train_size: int
    val_size: int
    seed: int
    def __init__(self, num_classes: _Optional[int] = ..., image_size: _Optional[int] = ..., channels: _Optional[int] = ..., train_size: _Optional[int] = ..., val_size: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class LossTerm(_message.Message):
    __slots__ = ("weight", "kd", "cross_entropy", "fitnet", "attention", "fsp", "self_distill", "dkd", "dense_flow", "ktsvd", "specialists")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KD_FIELD_NUMBER: _ClassVar[int]
    CROSS_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    FITNET_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    FSP_FIELD_NUMBER: _ClassVar[int]
    SELF_DISTILL_FIELD_NUMBER: _ClassVar[int]
    DKD_FIELD_NUMBER: _ClassVar[int]
    DENSE_FLOW_FIELD_NUMBER: _ClassVar[int]
    KTSVD_FIELD_NUMBER: _ClassVar[int]
    SPECIALISTS_FIELD_NUMBER: _ClassVar[int]
    weight: float
    kd: KnowledgeDistillation
    cross_entropy: CrossEntropy
    fitnet: FitNet
    attention: AttentionTransfer
    fsp: FlowOfSolutionProcedure
    self_distill: SelfDistillation
    dkd: DecoupledKnowledgeDistillation
    dense_flow: FlowOfSolutionProcedure
    ktsvd: SingularVectorTransfer
    specialists: SpecialistNetworks
    def __init__(self, weight: _Optional[float] = ..., kd: _Optional[_Union[KnowledgeDistillation, _Mapping]] = ..., cross_entropy: _Optional[_Union[CrossEntropy, _Mapping]] = ..., fitnet: _Optional[_Union[FitNet, _Mapping]] = ..., attention: _Optional[_Union[AttentionTransfer, _Mapping]] = ..., fsp: _Optional[_Union[FlowOfSolutionProcedure, _Mapping]] = ..., self_distill: _Optional[_Union[SelfDistillation, _Mapping]] = ..., dkd: _Optional[_Union[DecoupledKnowledgeDistillation, _Mapping]] = ..., dense_flow: _Optional[_Union[FlowOfSolutionProcedure, _Mapping]] = ..., ktsvd: _Optional[_Union[SingularVectorTransfer, _Mapping]] = ..., specialists: _Optional[_Union[SpecialistNetworks, _Mapping]] = ...) -> None: ...

class LayerPair(_message.Message):
    __slots__ = ("teacher", "student")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    student: str
    def __init__(self, teacher: _Optional[str] = ..., student: _Optional[str] = ...) -> None: ...

class CrossEntropy(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FitNet(_message.Message):
    __slots__ = ("hint", "hint_epochs")
    HINT_FIELD_NUMBER: _ClassVar[int]
    HINT_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    hint: LayerPair
    hint_epochs: int
    def __init__(self, hint: _Optional[_Union[LayerPair, _Mapping]] = ..., hint_epochs: _Optional[int] = ...) -> None: ...

class AttentionTransfer(_message.Message):
    __slots__ = ("layers", "beta")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerPair]
    beta: float
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerPair, _Mapping]]] = ..., beta: _Optional[float] = ...) -> None: ...

class FlowOfSolutionProcedure(_message.Message):
    __slots__ = ("layers", "flow_epochs", "euclidean_weight", "adversarial_weight")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FLOW_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    EUCLIDEAN_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ADVERSARIAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerPair]
    flow_epochs: int
    euclidean_weight: float
    adversarial_weight: float
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerPair, _Mapping]]] = ..., flow_epochs: _Optional[int] = ..., euclidean_weight: _Optional[float] = ..., adversarial_weight: _Optional[float] = ...) -> None: ...

class SingularVectorTransfer(_message.Message):
    __slots__ = ("layers", "flow_epochs", "singular_vectors")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FLOW_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SINGULAR_VECTORS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerPair]
    flow_epochs: int
    singular_vectors: int
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerPair, _Mapping]]] = ..., flow_epochs: _Optional[int] = ..., singular_vectors: _Optional[int] = ...) -> None: ...

class SpecialistNetworks(_message.Message):
    __slots__ = ("temperature", "alpha", "specialists", "specialist_epochs", "top_classes")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    SPECIALISTS_FIELD_NUMBER: _ClassVar[int]
    SPECIALIST_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TOP_CLASSES_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    alpha: float
    specialists: int
    specialist_epochs: int
    top_classes: int
    def __init__(self, temperature: _Optional[float] = ..., alpha: _Optional[float] = ..., specialists: _Optional[int] = ..., specialist_epochs: _Optional[int] = ..., top_classes: _Optional[int] = ...) -> None: ...

class SelfDistillation(_message.Message):
    __slots__ = ("kl_weight", "mmd_weight")
    KL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MMD_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    kl_weight: float
    mmd_weight: float
    def __init__(self, kl_weight: _Optional[float] = ..., mmd_weight: _Optional[float] = ...) -> None: ...

class KnowledgeDistillation(_message.Message):
    __slots__ = ("temperature", "alpha")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    alpha: float
    def __init__(self, temperature: _Optional[float] = ..., alpha: _Optional[float] = ...) -> None: ...

class DecoupledKnowledgeDistillation(_message.Message):
    __slots__ = ("alpha", "beta", "temperature")
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    alpha: float
    beta: float
    temperature: float
    def __init__(self, alpha: _Optional[float] = ..., beta: _Optional[float] = ..., temperature: _Optional[float] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("epochs", "batch_size", "optimizer", "learning_rate", "weight_decay", "lr_schedule", "seed", "checkpoint_interval_steps", "max_grad_norm", "augmentation", "teacher_views")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VIEWS_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    optimizer: Optimizer
    learning_rate: float
    weight_decay: float
    lr_schedule: LrSchedule
    seed: int
    checkpoint_interval_steps: int
    max_grad_norm: float
    augmentation: Augmentation
    teacher_views: int
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., lr_schedule: _Optional[_Union[LrSchedule, str]] = ..., seed: _Optional[int] = ..., checkpoint_interval_steps: _Optional[int] = ..., max_grad_norm: _Optional[float] = ..., augmentation: _Optional[_Union[Augmentation, str]] = ..., teacher_views: _Optional[int] = ...) -> None: ...

class ExportSpec(_message.Message):
    __slots__ = ("opset", "parity_tolerance", "dynamic_batch", "exporter", "int8", "accuracy_budget", "fp16", "input_size", "parity_relative_tolerance")
    OPSET_FIELD_NUMBER: _ClassVar[int]
    PARITY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCH_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    INT8_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    FP16_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARITY_RELATIVE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    opset: int
    parity_tolerance: float
    dynamic_batch: bool
    exporter: OnnxExporter
    int8: bool
    accuracy_budget: float
    fp16: bool
    input_size: ImageSize
    parity_relative_tolerance: float
    def __init__(self, opset: _Optional[int] = ..., parity_tolerance: _Optional[float] = ..., dynamic_batch: _Optional[bool] = ..., exporter: _Optional[_Union[OnnxExporter, str]] = ..., int8: _Optional[bool] = ..., accuracy_budget: _Optional[float] = ..., fp16: _Optional[bool] = ..., input_size: _Optional[_Union[ImageSize, _Mapping]] = ..., parity_relative_tolerance: _Optional[float] = ...) -> None: ...

class ImageSize(_message.Message):
    __slots__ = ("height", "width")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class BenchmarkSpec(_message.Message):
    __slots__ = ("batch_sizes", "warmup_runs", "min_runs", "min_seconds", "num_threads")
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    MIN_RUNS_FIELD_NUMBER: _ClassVar[int]
    MIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NUM_THREADS_FIELD_NUMBER: _ClassVar[int]
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    warmup_runs: int
    min_runs: int
    min_seconds: float
    num_threads: int
    def __init__(self, batch_sizes: _Optional[_Iterable[int]] = ..., warmup_runs: _Optional[int] = ..., min_runs: _Optional[int] = ..., min_seconds: _Optional[float] = ..., num_threads: _Optional[int] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("name", "sha256", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "request_id", "spec", "state", "stage", "progress", "error", "artifacts", "create_time", "start_time", "end_time", "run_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    spec: JobSpec
    state: JobState
    stage: str
    progress: float
    error: JobError
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    run_time: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("sequence", "time", "state", "stage", "progress", "step", "total_steps", "loss", "metrics", "message")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    state: JobState
    stage: str
    progress: float
    step: int
    total_steps: int
    loss: float
    metrics: _containers.ScalarMap[str, float]
    message: str
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., message: _Optional[str] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: JobState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class RetryJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class RetryJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("job_id", "create_time", "summary", "teacher", "student", "variants", "training", "export", "environment", "data_free", "per_class", "student_lowest_latency", "student_highest_throughput", "notes", "kind", "input_convention", "student_pick", "search")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    DATA_FREE_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    STUDENT_LOWEST_LATENCY_FIELD_NUMBER: _ClassVar[int]
    STUDENT_HIGHEST_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INPUT_CONVENTION_FIELD_NUMBER: _ClassVar[int]
    STUDENT_PICK_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    create_time: _timestamp_pb2.Timestamp
    summary: str
    teacher: ModelCard
    student: ModelCard
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    training: TrainingSummary
    export: ExportSummary
    environment: Environment
    data_free: DataFreeSummary
    per_class: _containers.RepeatedCompositeFieldContainer[ClassAccuracy]
    student_lowest_latency: LatencyPick
    student_highest_throughput: LatencyPick
    notes: _containers.RepeatedScalarFieldContainer[str]
    kind: JobKind
    input_convention: InputConvention
    student_pick: StudentPick
    search: SearchSummary
    def __init__(self, job_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., summary: _Optional[str] = ..., teacher: _Optional[_Union[ModelCard, _Mapping]] = ..., student: _Optional[_Union[ModelCard, _Mapping]] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., training: _Optional[_Union[TrainingSummary, _Mapping]] = ..., export: _Optional[_Union[ExportSummary, _Mapping]] = ..., environment: _Optional[_Union[Environment, _Mapping]] = ..., data_free: _Optional[_Union[DataFreeSummary, _Mapping]] = ..., per_class: _Optional[_Iterable[_Union[ClassAccuracy, _Mapping]]] = ..., student_lowest_latency: _Optional[_Union[LatencyPick, _Mapping]] = ..., student_highest_throughput: _Optional[_Union[LatencyPick, _Mapping]] = ..., notes: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[JobKind, str]] = ..., input_convention: _Optional[_Union[InputConvention, _Mapping]] = ..., student_pick: _Optional[_Union[StudentPick, _Mapping]] = ..., search: _Optional[_Union[SearchSummary, _Mapping]] = ...) -> None: ...

class SearchSummary(_message.Message):
    __slots__ = ("trials", "chosen_trial", "reason", "train_samples", "held_out_samples", "latency")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_TRIAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[SearchTrial]
    chosen_trial: int
    reason: str
    train_samples: int
    held_out_samples: int
    latency: str
    def __init__(self, trials: _Optional[_Iterable[_Union[SearchTrial, _Mapping]]] = ..., chosen_trial: _Optional[int] = ..., reason: _Optional[str] = ..., train_samples: _Optional[int] = ..., held_out_samples: _Optional[int] = ..., latency: _Optional[str] = ...) -> None: ...

class SearchTrial(_message.Message):
    __slots__ = ("number", "params", "held_out_top1", "seconds", "state", "note", "choices", "p50_ms", "pareto")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ChoicesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_TOP1_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    PARETO_FIELD_NUMBER: _ClassVar[int]
    number: int
    params: _containers.ScalarMap[str, float]
    held_out_top1: float
    seconds: float
    state: str
    note: str
    choices: _containers.ScalarMap[str, str]
    p50_ms: float
    pareto: bool
    def __init__(self, number: _Optional[int] = ..., params: _Optional[_Mapping[str, float]] = ..., held_out_top1: _Optional[float] = ..., seconds: _Optional[float] = ..., state: _Optional[str] = ..., note: _Optional[str] = ..., choices: _Optional[_Mapping[str, str]] = ..., p50_ms: _Optional[float] = ..., pareto: _Optional[bool] = ...) -> None: ...

class InputConvention(_message.Message):
    __slots__ = ("chosen", "mean", "std", "reason", "samples", "candidates")
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    chosen: str
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    reason: str
    samples: int
    candidates: _containers.RepeatedCompositeFieldContainer[InputConventionCandidate]
    def __init__(self, chosen: _Optional[str] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., reason: _Optional[str] = ..., samples: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[InputConventionCandidate, _Mapping]]] = ...) -> None: ...

class InputConventionCandidate(_message.Message):
    __slots__ = ("name", "mean", "std", "teacher_top1")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    TEACHER_TOP1_FIELD_NUMBER: _ClassVar[int]
    name: str
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    teacher_top1: float
    def __init__(self, name: _Optional[str] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., teacher_top1: _Optional[float] = ...) -> None: ...

class ClassAccuracy(_message.Message):
    __slots__ = ("name", "samples", "teacher_top1", "student_top1")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TEACHER_TOP1_FIELD_NUMBER: _ClassVar[int]
    STUDENT_TOP1_FIELD_NUMBER: _ClassVar[int]
    name: str
    samples: int
    teacher_top1: float
    student_top1: float
    def __init__(self, name: _Optional[str] = ..., samples: _Optional[int] = ..., teacher_top1: _Optional[float] = ..., student_top1: _Optional[float] = ...) -> None: ...

class LatencyPick(_message.Message):
    __slots__ = ("variant", "runtime", "batch_size", "p50_ms", "throughput_per_s")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    variant: str
    runtime: str
    batch_size: int
    p50_ms: float
    throughput_per_s: float
    def __init__(self, variant: _Optional[str] = ..., runtime: _Optional[str] = ..., batch_size: _Optional[int] = ..., p50_ms: _Optional[float] = ..., throughput_per_s: _Optional[float] = ...) -> None: ...

class DataFreeSummary(_message.Message):
    __slots__ = ("method", "iterations", "student_steps", "batch_size", "class_histogram", "generated_samples", "agreement_on_generated", "samples_artifact", "replay_steps", "batchnorm", "recipe", "logit_bound", "interventions", "teacher_confidence_on_generated")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    STUDENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLASS_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    GENERATED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ON_GENERATED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    REPLAY_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCHNORM_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BOUND_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_CONFIDENCE_ON_GENERATED_FIELD_NUMBER: _ClassVar[int]
    method: str
    iterations: int
    student_steps: int
    batch_size: int
    class_histogram: _containers.RepeatedScalarFieldContainer[int]
    generated_samples: int
    agreement_on_generated: float
    samples_artifact: str
    replay_steps: int
    batchnorm: str
    recipe: str
    logit_bound: float
    interventions: _containers.RepeatedScalarFieldContainer[str]
    teacher_confidence_on_generated: float
    def __init__(self, method: _Optional[str] = ..., iterations: _Optional[int] = ..., student_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., class_histogram: _Optional[_Iterable[int]] = ..., generated_samples: _Optional[int] = ..., agreement_on_generated: _Optional[float] = ..., samples_artifact: _Optional[str] = ..., replay_steps: _Optional[int] = ..., batchnorm: _Optional[str] = ..., recipe: _Optional[str] = ..., logit_bound: _Optional[float] = ..., interventions: _Optional[_Iterable[str]] = ..., teacher_confidence_on_generated: _Optional[float] = ...) -> None: ...

class StudentPick(_message.Message):
    __slots__ = ("budget", "candidates", "chosen", "reason", "teacher_p50_ms")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TEACHER_P50_MS_FIELD_NUMBER: _ClassVar[int]
    budget: str
    candidates: _containers.RepeatedCompositeFieldContainer[StudentCandidate]
    chosen: str
    reason: str
    teacher_p50_ms: float
    def __init__(self, budget: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[StudentCandidate, _Mapping]]] = ..., chosen: _Optional[str] = ..., reason: _Optional[str] = ..., teacher_p50_ms: _Optional[float] = ...) -> None: ...

class StudentCandidate(_message.Message):
    __slots__ = ("architecture", "parameters", "macs", "p50_ms", "fits", "note")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MACS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    parameters: int
    macs: int
    p50_ms: float
    fits: bool
    note: str
    def __init__(self, architecture: _Optional[str] = ..., parameters: _Optional[int] = ..., macs: _Optional[int] = ..., p50_ms: _Optional[float] = ..., fits: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class ModelCard(_message.Message):
    __slots__ = ("architecture", "parameters", "macs", "num_classes", "input_shape")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MACS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    parameters: int
    macs: int
    num_classes: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, architecture: _Optional[str] = ..., parameters: _Optional[int] = ..., macs: _Optional[int] = ..., num_classes: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("name", "model", "runtime", "precision", "accuracy", "file_size_bytes", "latency", "parameters", "macs", "top1_delta_vs_teacher", "device", "execution_provider", "artifact", "recommended", "note", "parity", "speedup_baseline")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MACS_FIELD_NUMBER: _ClassVar[int]
    TOP1_DELTA_VS_TEACHER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_BASELINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    runtime: str
    precision: str
    accuracy: Accuracy
    file_size_bytes: int
    latency: _containers.RepeatedCompositeFieldContainer[Latency]
    parameters: int
    macs: int
    top1_delta_vs_teacher: float
    device: str
    execution_provider: str
    artifact: str
    recommended: bool
    note: str
    parity: Parity
    speedup_baseline: str
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., runtime: _Optional[str] = ..., precision: _Optional[str] = ..., accuracy: _Optional[_Union[Accuracy, _Mapping]] = ..., file_size_bytes: _Optional[int] = ..., latency: _Optional[_Iterable[_Union[Latency, _Mapping]]] = ..., parameters: _Optional[int] = ..., macs: _Optional[int] = ..., top1_delta_vs_teacher: _Optional[float] = ..., device: _Optional[str] = ..., execution_provider: _Optional[str] = ..., artifact: _Optional[str] = ..., recommended: _Optional[bool] = ..., note: _Optional[str] = ..., parity: _Optional[_Union[Parity, _Mapping]] = ..., speedup_baseline: _Optional[str] = ...) -> None: ...

class Parity(_message.Message):
    __slots__ = ("samples", "max_abs_diff", "max_rel_diff", "top1_mismatch", "within_tolerance")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_DIFF_FIELD_NUMBER: _ClassVar[int]
    TOP1_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    WITHIN_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    samples: int
    max_abs_diff: float
    max_rel_diff: float
    top1_mismatch: float
    within_tolerance: bool
    def __init__(self, samples: _Optional[int] = ..., max_abs_diff: _Optional[float] = ..., max_rel_diff: _Optional[float] = ..., top1_mismatch: _Optional[float] = ..., within_tolerance: _Optional[bool] = ...) -> None: ...

class Accuracy(_message.Message):
    __slots__ = ("samples", "top1", "top5", "agreement_with_teacher")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    TOP5_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_WITH_TEACHER_FIELD_NUMBER: _ClassVar[int]
    samples: int
    top1: float
    top5: float
    agreement_with_teacher: float
    def __init__(self, samples: _Optional[int] = ..., top1: _Optional[float] = ..., top5: _Optional[float] = ..., agreement_with_teacher: _Optional[float] = ...) -> None: ...

class Latency(_message.Message):
    __slots__ = ("batch_size", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "throughput_per_s", "p95_ms", "peak_memory_bytes", "speedup_vs_teacher", "speedup_vs_teacher_pytorch")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    STDEV_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_VS_TEACHER_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_VS_TEACHER_PYTORCH_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    throughput_per_s: float
    p95_ms: float
    peak_memory_bytes: int
    speedup_vs_teacher: float
    speedup_vs_teacher_pytorch: float
    def __init__(self, batch_size: _Optional[int] = ..., runs: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., stdev_ms: _Optional[float] = ..., throughput_per_s: _Optional[float] = ..., p95_ms: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., speedup_vs_teacher: _Optional[float] = ..., speedup_vs_teacher_pytorch: _Optional[float] = ...) -> None: ...

class TrainingSummary(_message.Message):
    __slots__ = ("method", "epochs", "steps", "final_loss", "wall_seconds", "device", "train_samples", "val_samples", "processes", "samples_seen", "data_loading", "augmentation", "pretrained", "specialists", "generalist_top1")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    VAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_SEEN_FIELD_NUMBER: _ClassVar[int]
    DATA_LOADING_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    SPECIALISTS_FIELD_NUMBER: _ClassVar[int]
    GENERALIST_TOP1_FIELD_NUMBER: _ClassVar[int]
    method: str
    epochs: int
    steps: int
    final_loss: float
    wall_seconds: float
    device: str
    train_samples: int
    val_samples: int
    processes: int
    samples_seen: int
    data_loading: str
    augmentation: str
    pretrained: PretrainedStart
    specialists: _containers.RepeatedCompositeFieldContainer[Specialist]
    generalist_top1: float
    def __init__(self, method: _Optional[str] = ..., epochs: _Optional[int] = ..., steps: _Optional[int] = ..., final_loss: _Optional[float] = ..., wall_seconds: _Optional[float] = ..., device: _Optional[str] = ..., train_samples: _Optional[int] = ..., val_samples: _Optional[int] = ..., processes: _Optional[int] = ..., samples_seen: _Optional[int] = ..., data_loading: _Optional[str] = ..., augmentation: _Optional[str] = ..., pretrained: _Optional[_Union[PretrainedStart, _Mapping]] = ..., specialists: _Optional[_Iterable[_Union[Specialist, _Mapping]]] = ..., generalist_top1: _Optional[float] = ...) -> None: ...

class Specialist(_message.Message):
    __slots__ = ("classes", "train_samples")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedScalarFieldContainer[str]
    train_samples: int
    def __init__(self, classes: _Optional[_Iterable[str]] = ..., train_samples: _Optional[int] = ...) -> None: ...

class PretrainedStart(_message.Message):
    __slots__ = ("model_id", "tensors_loaded", "reinitialised", "adapted")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_LOADED_FIELD_NUMBER: _ClassVar[int]
    REINITIALISED_FIELD_NUMBER: _ClassVar[int]
    ADAPTED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    tensors_loaded: int
    reinitialised: _containers.RepeatedScalarFieldContainer[str]
    adapted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_id: _Optional[str] = ..., tensors_loaded: _Optional[int] = ..., reinitialised: _Optional[_Iterable[str]] = ..., adapted: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportSummary(_message.Message):
    __slots__ = ("opset", "exporter", "parity_max_abs_diff", "parity_tolerance", "parity_samples", "parity_max_rel_diff", "parity_top1_mismatch", "dynamic_batch", "accuracy_budget", "bundle_artifact", "input_shape", "parity_relative_tolerance")
    OPSET_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    PARITY_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    PARITY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    PARITY_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PARITY_MAX_REL_DIFF_FIELD_NUMBER: _ClassVar[int]
    PARITY_TOP1_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCH_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARITY_RELATIVE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    opset: int
    exporter: str
    parity_max_abs_diff: float
    parity_tolerance: float
    parity_samples: int
    parity_max_rel_diff: float
    parity_top1_mismatch: float
    dynamic_batch: bool
    accuracy_budget: float
    bundle_artifact: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    parity_relative_tolerance: float
    def __init__(self, opset: _Optional[int] = ..., exporter: _Optional[str] = ..., parity_max_abs_diff: _Optional[float] = ..., parity_tolerance: _Optional[float] = ..., parity_samples: _Optional[int] = ..., parity_max_rel_diff: _Optional[float] = ..., parity_top1_mismatch: _Optional[float] = ..., dynamic_batch: _Optional[bool] = ..., accuracy_budget: _Optional[float] = ..., bundle_artifact: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., parity_relative_tolerance: _Optional[float] = ...) -> None: ...

class Environment(_message.Message):
    __slots__ = ("cpu", "cpu_cores", "num_threads", "gpu", "torch_version", "onnxruntime_version", "onnx_version", "execution_providers", "python_version", "platform", "runtimes")
    CPU_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    NUM_THREADS_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNX_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    cpu: str
    cpu_cores: int
    num_threads: int
    gpu: str
    torch_version: str
    onnxruntime_version: str
    onnx_version: str
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    python_version: str
    platform: str
    runtimes: _containers.RepeatedCompositeFieldContainer[RuntimeInfo]
    def __init__(self, cpu: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., num_threads: _Optional[int] = ..., gpu: _Optional[str] = ..., torch_version: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., onnx_version: _Optional[str] = ..., execution_providers: _Optional[_Iterable[str]] = ..., python_version: _Optional[str] = ..., platform: _Optional[str] = ..., runtimes: _Optional[_Iterable[_Union[RuntimeInfo, _Mapping]]] = ...) -> None: ...

class RuntimeInfo(_message.Message):
    __slots__ = ("name", "version", "targets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: Report
    def __init__(self, report: _Optional[_Union[Report, _Mapping]] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("job_id", "name")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DownloadArtifactResponse(_message.Message):
    __slots__ = ("artifact", "chunk")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    chunk: bytes
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...
