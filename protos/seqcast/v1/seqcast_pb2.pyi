from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_LENGTH: FinishReason

class TranslateRequest(_message.Message):
    __slots__ = ("model", "texts", "max_new_tokens", "decoding", "min_new_tokens", "alignments")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODING_FIELD_NUMBER: _ClassVar[int]
    MIN_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    max_new_tokens: int
    decoding: Decoding
    min_new_tokens: int
    alignments: bool
    def __init__(self, model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., max_new_tokens: _Optional[int] = ..., decoding: _Optional[_Union[Decoding, _Mapping]] = ..., min_new_tokens: _Optional[int] = ..., alignments: _Optional[bool] = ...) -> None: ...

class Decoding(_message.Message):
    __slots__ = ("greedy", "beam_search", "sampling")
    GREEDY_FIELD_NUMBER: _ClassVar[int]
    BEAM_SEARCH_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    greedy: Greedy
    beam_search: BeamSearch
    sampling: Sampling
    def __init__(self, greedy: _Optional[_Union[Greedy, _Mapping]] = ..., beam_search: _Optional[_Union[BeamSearch, _Mapping]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ...) -> None: ...

class Greedy(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BeamSearch(_message.Message):
    __slots__ = ("beam_size", "length_penalty")
    BEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_PENALTY_FIELD_NUMBER: _ClassVar[int]
    beam_size: int
    length_penalty: float
    def __init__(self, beam_size: _Optional[int] = ..., length_penalty: _Optional[float] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class TranslationResult(_message.Message):
    __slots__ = ("text", "finish_reason", "input_tokens", "output_tokens", "alignments")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    alignments: Alignments
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., alignments: _Optional[_Union[Alignments, _Mapping]] = ...) -> None: ...

class Alignments(_message.Message):
    __slots__ = ("source_tokens", "rows")
    SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    source_tokens: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[AlignmentRow]
    def __init__(self, source_tokens: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[AlignmentRow, _Mapping]]] = ...) -> None: ...

class AlignmentRow(_message.Message):
    __slots__ = ("target_token", "weights")
    TARGET_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    target_token: str
    weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, target_token: _Optional[str] = ..., weights: _Optional[_Iterable[float]] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("model", "model_version", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    results: _containers.RepeatedCompositeFieldContainer[TranslationResult]
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[TranslationResult, _Mapping]]] = ...) -> None: ...

class TranslateChunk(_message.Message):
    __slots__ = ("index", "text", "finish_reason", "input_tokens", "output_tokens", "alignments")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    alignments: Alignments
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., alignments: _Optional[_Union[Alignments, _Mapping]] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ForecastRequest(_message.Message):
    __slots__ = ("model", "series", "horizon")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    model: str
    series: _containers.RepeatedCompositeFieldContainer[Series]
    horizon: int
    def __init__(self, model: _Optional[str] = ..., series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., horizon: _Optional[int] = ...) -> None: ...

class QuantileForecast(_message.Message):
    __slots__ = ("level", "values")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    level: float
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, level: _Optional[float] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class SeriesForecast(_message.Message):
    __slots__ = ("point", "quantiles", "context_used")
    POINT_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_USED_FIELD_NUMBER: _ClassVar[int]
    point: _containers.RepeatedScalarFieldContainer[float]
    quantiles: _containers.RepeatedCompositeFieldContainer[QuantileForecast]
    context_used: int
    def __init__(self, point: _Optional[_Iterable[float]] = ..., quantiles: _Optional[_Iterable[_Union[QuantileForecast, _Mapping]]] = ..., context_used: _Optional[int] = ...) -> None: ...

class ForecastResponse(_message.Message):
    __slots__ = ("model", "model_version", "point", "forecasts")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    FORECASTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    point: str
    forecasts: _containers.RepeatedCompositeFieldContainer[SeriesForecast]
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., point: _Optional[str] = ..., forecasts: _Optional[_Iterable[_Union[SeriesForecast, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ForecastInfo(_message.Message):
    __slots__ = ("context_length", "min_context", "max_horizon", "quantile_levels", "point", "frequency", "season_length")
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MIN_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_HORIZON_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_LEVELS_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    SEASON_LENGTH_FIELD_NUMBER: _ClassVar[int]
    context_length: int
    min_context: int
    max_horizon: int
    quantile_levels: _containers.RepeatedScalarFieldContainer[float]
    point: str
    frequency: str
    season_length: int
    def __init__(self, context_length: _Optional[int] = ..., min_context: _Optional[int] = ..., max_horizon: _Optional[int] = ..., quantile_levels: _Optional[_Iterable[float]] = ..., point: _Optional[str] = ..., frequency: _Optional[str] = ..., season_length: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "task", "architecture", "execution_provider", "max_source_tokens", "max_new_tokens", "metadata", "forecast")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FORECAST_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    task: str
    architecture: str
    execution_provider: str
    max_source_tokens: int
    max_new_tokens: int
    metadata: _containers.ScalarMap[str, str]
    forecast: ForecastInfo
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., task: _Optional[str] = ..., architecture: _Optional[str] = ..., execution_provider: _Optional[str] = ..., max_source_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., forecast: _Optional[_Union[ForecastInfo, _Mapping]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_translation_model", "default_forecast_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TRANSLATION_MODEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FORECAST_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_translation_model: str
    default_forecast_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_translation_model: _Optional[str] = ..., default_forecast_model: _Optional[str] = ...) -> None: ...
