//! `terraform-provider-cairntest`: one resource, `cairntest_file`, that manages a local file.
//!
//! Small enough to build in seconds, real enough that Terraform runs its full protocol against
//! it: create, read (drift when the file disappears), in-place update when `content` changes,
//! replacement when `path` changes, delete.

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueEmpty, ValueString};
use tf_provider::{
    map, serve, AttributePath, Diagnostics, DynamicDataSource, DynamicResource, Provider, Resource,
};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct FileState<'a> {
    #[serde(borrow = "'a")]
    id: ValueString<'a>,
    #[serde(borrow = "'a")]
    path: ValueString<'a>,
    #[serde(borrow = "'a")]
    content: ValueString<'a>,
}

#[derive(Debug, Default, Clone, Copy)]
struct FileResource;

fn known<'a>(
    diags: &mut Diagnostics,
    value: &'a ValueString<'_>,
    what: &'static str,
) -> Option<&'a str> {
    match value {
        Value::Value(v) => Some(v.as_ref()),
        _ => {
            diags.root_error_short(format!("`{what}` must be known at apply time"));
            None
        }
    }
}

async fn write_file(diags: &mut Diagnostics, path: &str, content: &str) -> Option<()> {
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            if let Err(e) = tokio::fs::create_dir_all(parent).await {
                diags.root_error("cannot create parent directory", format!("{path}: {e}"));
                return None;
            }
        }
    }
    match tokio::fs::write(path, content).await {
        Ok(()) => Some(()),
        Err(e) => {
            diags.root_error("cannot write file", format!("{path}: {e}"));
            None
        }
    }
}

#[async_trait]
impl Resource for FileResource {
    type State<'a> = FileState<'a>;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                version: 1,
                description: Description::plain("A local file with the given content."),
                attributes: map! {
                    "id" => Attribute {
                        attr_type: AttributeType::String,
                        description: Description::plain("The file path."),
                        constraint: AttributeConstraint::Computed,
                        ..Default::default()
                    },
                    "path" => Attribute {
                        attr_type: AttributeType::String,
                        description: Description::plain("Where the file lives; changing it replaces the resource."),
                        constraint: AttributeConstraint::Required,
                        ..Default::default()
                    },
                    "content" => Attribute {
                        attr_type: AttributeType::String,
                        description: Description::plain("File content; changing it updates the file in place."),
                        constraint: AttributeConstraint::Required,
                        ..Default::default()
                    },
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, _diags: &mut Diagnostics, _config: Self::State<'a>) -> Option<()> {
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let path = known(diags, &state.path, "path")?.to_owned();
        match tokio::fs::read_to_string(&path).await {
            Ok(content) => {
                let mut state = state;
                state.content = Value::Value(Cow::Owned(content));
                Some((state, private_state))
            }
            // Gone from disk: Terraform plans to create it again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                diags.root_error("cannot read file", format!("{path}: {e}"));
                Some((state, private_state))
            }
        }
    }

    async fn plan_create<'a>(
        &self,
        _diags: &mut Diagnostics,
        proposed_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let mut state = proposed_state;
        state.id = state.path.clone();
        Some((state, Default::default()))
    }

    async fn plan_update<'a>(
        &self,
        _diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        proposed_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>, Vec<AttributePath>)> {
        let mut replace = Vec::new();
        let mut state = proposed_state;
        if state.path != prior_state.path {
            replace.push(AttributePath::new("path"));
            state.id = state.path.clone();
        } else {
            state.id = prior_state.id.clone();
        }
        Some((state, prior_private_state, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _diags: &mut Diagnostics,
        _prior_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::PrivateState<'a>> {
        Some(prior_private_state)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let path = known(diags, &planned_state.path, "path")?.to_owned();
        let content = known(diags, &planned_state.content, "content")?.to_owned();
        write_file(diags, &path, &content).await?;
        let mut state = planned_state;
        state.id = Value::Value(Cow::Owned(path));
        Some((state, private_state))
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        _prior_state: Self::State<'a>,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let path = known(diags, &planned_state.path, "path")?.to_owned();
        let content = known(diags, &planned_state.content, "content")?.to_owned();
        write_file(diags, &path, &content).await?;
        Some((planned_state, private_state))
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        _private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let path = known(diags, &state.path, "path")?;
        match tokio::fs::remove_file(path).await {
            Ok(()) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
            Err(e) => {
                diags.root_error("cannot delete file", format!("{path}: {e}"));
                None
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
struct CairnTestProvider;

#[async_trait]
impl Provider for CairnTestProvider {
    type Config<'a> = ValueEmpty;
    type MetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::plain("Cairn test provider: local files."),
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(
        &self,
        _diags: &mut Diagnostics,
        _config: Self::Config<'a>,
    ) -> Option<()> {
        Some(())
    }

    async fn configure<'a>(
        &self,
        _diags: &mut Diagnostics,
        _terraform_version: String,
        _config: Self::Config<'a>,
    ) -> Option<()> {
        Some(())
    }

    fn get_resources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        Some(map! { "file" => FileResource })
    }

    fn get_data_sources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicDataSource>>> {
        Some(map! {})
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    serve("cairntest", CairnTestProvider).await
}
