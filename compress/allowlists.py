"""What an uploaded model may contain: Keras classes and TensorFlow ops we accept.

Allow-lists, not deny-lists: a Keras class or a graph op that is not named
here is refused, so a new Keras release or a TensorFlow op we never reviewed
cannot slip through. The deny tables below exist only to give the tenant a
precise reason ("op ReadFile reads or writes files") instead of a generic one.

Layers are the Keras 3 built-ins whose serving graph is plain tensor math.
Left out on purpose: ``Lambda`` (pickled Python bytecode), wrappers of foreign
code (``TFSMLayer``, ``TorchModuleWrapper``, ``JaxLayer``, ``FlaxLayer``),
string and hashing preprocessing, and random augmentation layers.
"""

from __future__ import annotations


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


_CONVOLUTIONS = (
    "Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose "
    "Convolution1D Convolution2D Convolution3D Convolution1DTranspose Convolution2DTranspose "
    "Convolution3DTranspose DepthwiseConv1D DepthwiseConv2D SeparableConv1D SeparableConv2D "
    "SeparableConvolution1D SeparableConvolution2D ConvLSTM1D ConvLSTM2D ConvLSTM3D"
)
_POOLING = (
    "MaxPooling1D MaxPooling2D MaxPooling3D MaxPool1D MaxPool2D MaxPool3D "
    "AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D "
    "GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GlobalMaxPool1D GlobalMaxPool2D "
    "GlobalMaxPool3D GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D "
    "GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D"
)
_CORE = (
    "InputLayer Dense EinsumDense Embedding Activation Identity Masking "
    "Flatten Reshape Permute RepeatVector Cropping1D Cropping2D Cropping3D "
    "ZeroPadding1D ZeroPadding2D ZeroPadding3D UpSampling1D UpSampling2D UpSampling3D "
    "Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianDropout GaussianNoise "
    "AlphaDropout ActivityRegularization BatchNormalization LayerNormalization "
    "GroupNormalization UnitNormalization RMSNormalization SpectralNormalization "
    "ReLU LeakyReLU PReLU ELU Softmax Add Subtract Multiply Average Maximum Minimum "
    "Concatenate Dot Attention AdditiveAttention MultiHeadAttention GroupQueryAttention "
    "LSTM GRU SimpleRNN RNN LSTMCell GRUCell SimpleRNNCell StackedRNNCells "
    "Bidirectional TimeDistributed Rescaling Normalization Resizing CenterCrop"
)

KERAS_LAYERS = _names(f"{_CONVOLUTIONS} {_POOLING} {_CORE}")

# Model containers, dtype policies and the objects layers are configured with.
KERAS_OBJECTS: dict[str, frozenset[str]] = {
    "keras": _names("Sequential Functional Model DTypePolicy FloatDTypePolicy DTypePolicyMap"),
    "keras.models": _names("Sequential Functional Model"),
    "keras.src.models.functional": frozenset({"Functional"}),
    "keras.src.models.sequential": frozenset({"Sequential"}),
    "keras.dtype_policies": _names("DTypePolicy FloatDTypePolicy DTypePolicyMap"),
    "keras.initializers": _names(
        "Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity IdentityInitializer "
        "LecunNormal LecunUniform Ones Orthogonal OrthogonalInitializer RandomNormal "
        "RandomUniform TruncatedNormal VarianceScaling Zeros"
    ),
    "keras.regularizers": _names("L1 L1L2 L2 OrthogonalRegularizer"),
    "keras.constraints": _names("MaxNorm MinMaxNorm NonNeg UnitNorm"),
    "keras.optimizers": _names(
        "Adadelta Adafactor Adagrad Adam AdamW Adamax Ftrl Lamb Lion Nadam RMSprop SGD"
    ),
    "keras.optimizers.schedules": _names(
        "CosineDecay CosineDecayRestarts ExponentialDecay InverseTimeDecay "
        "PiecewiseConstantDecay PolynomialDecay"
    ),
    "keras.losses": _names(
        "BinaryCrossentropy BinaryFocalCrossentropy CategoricalCrossentropy "
        "CategoricalFocalCrossentropy CategoricalHinge CosineSimilarity Hinge Huber "
        "KLDivergence LogCosh MeanAbsoluteError MeanAbsolutePercentageError MeanSquaredError "
        "MeanSquaredLogarithmicError Poisson SparseCategoricalCrossentropy SquaredHinge"
    ),
    "keras.metrics": _names(
        "AUC Accuracy BinaryAccuracy BinaryCrossentropy CategoricalAccuracy "
        "CategoricalCrossentropy F1Score FBetaScore MeanAbsoluteError MeanSquaredError "
        "Precision Recall RootMeanSquaredError SparseCategoricalAccuracy "
        "SparseCategoricalCrossentropy SparseTopKCategoricalAccuracy "
        "TopKCategoricalAccuracy"
    ),
}
KERAS_OBJECTS["keras.layers"] = KERAS_LAYERS

# Functions Keras serialises as {"module": "builtins", "class_name": "function"}:
# Keras resolves them by name among its own built-ins, and so do we.
KERAS_FUNCTIONS = _names(
    "relu relu6 leaky_relu elu selu gelu silu swish mish sigmoid hard_sigmoid hard_silu "
    "hard_swish softmax log_softmax softplus softsign tanh exponential linear "
    "sparse_categorical_crossentropy categorical_crossentropy binary_crossentropy "
    "mean_squared_error mean_absolute_error huber kl_divergence "
    "sparse_categorical_accuracy categorical_accuracy binary_accuracy "
    "sparse_top_k_categorical_accuracy top_k_categorical_accuracy"
)

# Serialisation markers Keras writes without a module; all are plain data.
KERAS_MARKERS = _names(
    "__keras_tensor__ __tuple__ __numpy__ __tensor__ __bytes__ __ellipsis__ __slice__"
)

REFUSED_KERAS = {
    "Lambda": "Lambda layers are not accepted (they carry Python code)",
    "__lambda__": "Python lambdas are not accepted (they carry Python code)",
    "TFSMLayer": "TFSMLayer is not accepted (it loads an external SavedModel)",
    "TorchModuleWrapper": "TorchModuleWrapper is not accepted (it wraps foreign code)",
    "JaxLayer": "JaxLayer is not accepted (it wraps foreign code)",
    "FlaxLayer": "FlaxLayer is not accepted (it wraps foreign code)",
}

# TensorFlow ops a served graph may use: tensor math, shapes, control flow,
# resource variables and function calls. No I/O, strings, randomness, Python.
GRAPH_OPS = _names(
    # constants, placeholders, identity and calls
    "Const Placeholder PlaceholderWithDefault Identity IdentityN NoOp StopGradient "
    "PreventGradient Snapshot EnsureShape StatefulPartitionedCall PartitionedCall "
    "While StatelessWhile If StatelessIf Case StatelessCase "
    # resource variables
    "VarHandleOp ReadVariableOp AssignVariableOp VarIsInitializedOp "
    # elementwise math
    "Abs Add AddN AddV2 Sub Mul RealDiv Div DivNoNan FloorDiv FloorMod Mod Neg "
    "Reciprocal Pow Square Sqrt Rsqrt Exp Expm1 Log Log1p Sign Round Rint Floor Ceil "
    "Maximum Minimum ClipByValue SquaredDifference Erf Erfc Sin Cos Tan Tanh Atan Atan2 "
    "Sigmoid Relu Relu6 Elu Selu LeakyRelu Softplus Softsign Softmax LogSoftmax "
    "Cast Equal NotEqual Less LessEqual Greater GreaterEqual LogicalAnd LogicalOr "
    "LogicalNot IsNan IsFinite Select SelectV2 ZerosLike OnesLike "
    # reductions, linear algebra, neural network kernels
    "Sum Mean Max Min Prod All Any ArgMax ArgMin Cumsum Cumprod TopKV2 "
    "MatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 Einsum BiasAdd "
    "Conv2D Conv3D Conv2DBackpropInput Conv3DBackpropInputV2 "
    "DepthwiseConv2dNative MaxPool MaxPoolV2 MaxPool3D AvgPool AvgPool3D "
    "FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 L2Loss "
    "ResizeBilinear ResizeNearestNeighbor ResizeBicubic "
    "FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsPerChannel FakeQuantWithMinMaxArgs "
    # shapes and data movement
    "Shape ShapeN Size Rank Reshape Squeeze ExpandDims Transpose ConjugateTranspose "
    "Pack Unpack ConcatV2 Concat Split SplitV Slice StridedSlice Tile Fill Range "
    "Pad PadV2 MirrorPad GatherV2 GatherNd ScatterNd Where OneHot ReverseV2 "
    "BroadcastTo BroadcastArgs BroadcastGradientArgs SpaceToDepth DepthToSpace "
    "SpaceToBatchND BatchToSpaceND MatrixBandPart MatrixDiag MatrixDiagV3 "
    # tensor lists (how Keras RNN loops carry their state)
    "TensorListFromTensor TensorListGetItem TensorListReserve TensorListSetItem "
    "TensorListStack TensorListLength TensorListElementShape"
)

# Ops the SavedModel saver needs (the save and restore functions TensorFlow
# writes next to every graph). Allowed only in functions reachable from the
# saver, never from a signature.
SAVER_OPS = _names(
    "SaveV2 RestoreV2 MergeV2Checkpoints ShardedFilename StringJoin StaticRegexFullMatch "
    "DisableCopyOnRead"
)

_FILE_OPS = (
    "ReadFile WriteFile MatchingFiles DeleteFile IsDirectory FileExists ImmutableConst "
    "TFRecordReader TFRecordReaderV2 WholeFileReader WholeFileReaderV2 ReaderReadV2 "
    "FixedLengthRecordDataset TFRecordDataset TextLineDataset SaveSlices Save Restore "
    "RestoreSlice DecodeProtoV2 LoadAndRemapMatrix"
)
_PYTHON_OPS = "PyFunc PyFuncStateless EagerPyFunc"
_PRINT_OPS = "Print PrintV2 StringFormat AsString Assert DebugIdentity DebugIdentityV2"
_NETWORK_OPS = "Rpc TryRpc RpcCall RpcClient RpcServer RpcServerStart RpcServerRegister"

REFUSED_OPS: dict[str, str] = {
    **dict.fromkeys(_names(_FILE_OPS), "reads or writes files"),
    **dict.fromkeys(_names(_PYTHON_OPS), "runs Python code"),
    **dict.fromkeys(_names(_PRINT_OPS), "formats or prints strings"),
    **dict.fromkeys(_names(_NETWORK_OPS), "talks to the network"),
}
