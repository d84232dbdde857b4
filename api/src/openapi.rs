//! Every schema of the API model in one OpenAPI component set, for the controller's
//! OpenAPI document to merge (its paths are the controller's; the bodies are here).

use utoipa::OpenApi;

use crate::{
    autoscaler, blueprints, datasets, error, health, hosts, images, instances, join_tokens,
};
use crate::{session, users};

/// The components (`#/components/schemas/…`) of every type in this crate.
#[derive(OpenApi)]
#[openapi(components(schemas(
    error::ErrorBody,
    error::ErrorDetail,
    error::FieldError,
    error::OffsetConflict,
    health::Health,
    users::Role,
    users::User,
    users::Principal,
    users::NewUser,
    session::Login,
    session::LoginResponse,
    session::ApiTokenView,
    join_tokens::CreateToken,
    join_tokens::CreatedTokenView,
    join_tokens::JoinTokenView,
    instances::InstanceState,
    instances::Transition,
    instances::AppView,
    instances::InstanceView,
    instances::InstanceDataset,
    instances::Launch,
    instances::Extend,
    blueprints::AppKind,
    blueprints::Strategy,
    blueprints::BlueprintInput,
    blueprints::PrepullInput,
    blueprints::DatasetInput,
    blueprints::DatasetVersionInput,
    blueprints::BlueprintDataset,
    blueprints::PullPolicy,
    blueprints::Prepull,
    blueprints::ResolvedImage,
    blueprints::BlueprintSpec,
    blueprints::BlueprintRecord,
    blueprints::Revision,
    blueprints::Refreshed,
    hosts::HostState,
    hosts::HostTransition,
    hosts::Standing,
    hosts::PoolState,
    hosts::PoolNote,
    hosts::HostView,
    hosts::Drain,
    images::ImageRecord,
    autoscaler::AutoscalerView,
    autoscaler::Waiting,
    autoscaler::ScaleAction,
    autoscaler::Decision,
    datasets::DatasetVersionView,
    datasets::DatasetRecord,
    datasets::CommitAnswer,
    datasets::MissingQuery,
    datasets::MissingAnswer,
    datasets::PackAnswer,
)))]
#[derive(Debug)]
pub struct ApiModel;
